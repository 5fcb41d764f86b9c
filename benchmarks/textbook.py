"""The textbook pipeline the benchmark compares taxi-job with, written the way the seed
notebook writes it (sections 1.1-1.2): pandas, ``DictVectorizer``, a sparse
``LinearRegression`` and pickles.

    textbook.py train TRAIN EVAL OUTDIR   fit on TRAIN, evaluate on EVAL, pickle into OUTDIR
    textbook.py infer INPUT OUTDIR        predict INPUT with OUTDIR's pickles and write
                                          OUTDIR/predictions/<input name>

Each command prints one JSON line on stdout. It is the baseline, not project code: it
keeps the notebook's choices (read every column, build one dict per row, pickle) on
purpose, so do not "fix" it.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LinearRegression
from sklearn.metrics import root_mean_squared_error

CATEGORICAL_VARS = ["PULocationID", "DOLocationID"]
PICKUP = "tpep_pickup_datetime"
DROPOFF = "tpep_dropoff_datetime"


def load_data(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


def compute_target(taxi_rides: pd.DataFrame) -> pd.DataFrame:
    taxi_rides["duration"] = taxi_rides[DROPOFF] - taxi_rides[PICKUP]
    taxi_rides["duration"] = taxi_rides["duration"].dt.total_seconds() / 60
    return taxi_rides


def filter_outliers(
    taxi_rides: pd.DataFrame, min_duration: int = 1, max_duration: int = 60
) -> pd.DataFrame:
    return taxi_rides[taxi_rides["duration"].between(min_duration, max_duration)]


def encode_categorical_cols(taxi_rides: pd.DataFrame) -> pd.DataFrame:
    taxi_rides[CATEGORICAL_VARS] = (
        taxi_rides[CATEGORICAL_VARS].fillna(-1).astype("int").astype("str")
    )
    return taxi_rides


def vectorize_dataframe(
    taxi_rides: pd.DataFrame, dict_vectorizer: DictVectorizer | None, with_target: bool
) -> dict:
    dicts = taxi_rides[CATEGORICAL_VARS].to_dict(orient="records")
    target = taxi_rides["duration"].values if with_target else None
    if dict_vectorizer is None:
        dict_vectorizer = DictVectorizer()
        dict_vectorizer.fit(dicts)
    return {"x": dict_vectorizer.transform(dicts), "y": target, "dv": dict_vectorizer}


def process_data(path: str, dict_vectorizer: DictVectorizer | None = None) -> dict:
    df = load_data(path)
    rows_read = len(df)
    df = df.pipe(compute_target).pipe(filter_outliers).pipe(encode_categorical_cols)
    data = vectorize_dataframe(df, dict_vectorizer, with_target=True)
    data["rows_read"] = rows_read
    return data


def save_pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def load_pickle(path: Path) -> object:
    with open(path, "rb") as f:
        return pickle.load(f)


def train(train_path: str, eval_path: str, outdir: Path) -> dict:
    started = time.perf_counter()
    outdir.mkdir(parents=True, exist_ok=True)
    train_data = process_data(train_path)
    eval_data = process_data(eval_path, dict_vectorizer=train_data["dv"])
    model = LinearRegression()
    model.fit(train_data["x"], train_data["y"])
    rmse_train = root_mean_squared_error(train_data["y"], model.predict(train_data["x"]))
    rmse_eval = root_mean_squared_error(eval_data["y"], model.predict(eval_data["x"]))
    save_pickle(outdir / "model.pkl", model)
    save_pickle(outdir / "dv.pkl", train_data["dv"])
    return {
        "rmse_train": float(rmse_train),
        "rmse_eval": float(rmse_eval),
        "rows": int(train_data["x"].shape[0]),
        "rows_read": train_data["rows_read"],
        "eval_rows": int(eval_data["x"].shape[0]),
        "features": len(train_data["dv"].feature_names_),
        "seconds": round(time.perf_counter() - started, 3),
    }


def infer(input_path: str, outdir: Path) -> dict:
    started = time.perf_counter()
    model = load_pickle(outdir / "model.pkl")
    dv = load_pickle(outdir / "dv.pkl")
    df = load_data(input_path)
    # The notebook predicts every row (no duration filter at inference). Keep the raw
    # columns for the output, as taxi-job writes them, before encoding turns them to str.
    out = df[[PICKUP, *CATEGORICAL_VARS]].copy()
    out[CATEGORICAL_VARS] = out[CATEGORICAL_VARS].astype("Int64")  # NaN made them float
    data = vectorize_dataframe(encode_categorical_cols(df), dv, with_target=False)
    out.insert(0, "row", np.arange(len(out), dtype=np.int64))
    out["predicted_duration"] = model.predict(data["x"])
    predictions = outdir / "predictions"
    predictions.mkdir(parents=True, exist_ok=True)
    output = predictions / Path(input_path).name
    out.to_parquet(output, index=False)
    return {
        "rows": len(out),
        "output": str(output),
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "train":
        result = train(argv[1], argv[2], Path(argv[3]))
    elif len(argv) == 3 and argv[0] == "infer":
        result = infer(argv[1], Path(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
