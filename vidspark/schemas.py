"""Spark schemas of every table vidspark writes (the data contracts of DESIGN.md)."""

from __future__ import annotations

from pyspark.sql import types as T

IDENTITY_FIELDS = [
    T.StructField("uri", T.StringType(), False),
    T.StructField("etag", T.StringType(), True),
    T.StructField("camera_id", T.StringType(), False),
    T.StructField("video_id", T.StringType(), True),
    T.StructField("frame_idx", T.LongType(), False),
    T.StructField("frame_ts", T.TimestampType(), False),
    T.StructField("date", T.DateType(), False),
    T.StructField("label", T.StringType(), True),
]

# What a failed row carries, in the featurize output and the video probe output alike.
_ERROR_FIELDS = [
    T.StructField("stage", T.StringType(), True),
    T.StructField("error_type", T.StringType(), True),
    T.StructField("message", T.StringType(), True),
]

# One listed object, from a live listing or an S3 Inventory report: ``uri`` is the full URI
# (``s3://bucket/key`` or a local path), ``key`` the key relative to the input prefix.
LISTING_SCHEMA = T.StructType(
    [
        T.StructField("uri", T.StringType(), False),
        T.StructField("key", T.StringType(), False),
        T.StructField("size", T.LongType(), True),
        T.StructField("etag", T.StringType(), True),
        T.StructField("last_modified", T.TimestampType(), True),
    ]
)

INVENTORY_SCHEMA = T.StructType([*IDENTITY_FIELDS, T.StructField("size", T.LongType(), True)])

# One unit of featurize work: an image, a whole video, or one keyframe-aligned segment of a video.
WORK_SCHEMA = T.StructType(
    [
        *INVENTORY_SCHEMA.fields,
        T.StructField("key", T.StringType(), False),
        T.StructField("kind", T.StringType(), False),  # image | video | auto (decided by content)
        T.StructField("seg_start", T.LongType(), True),
        T.StructField("seg_end", T.LongType(), True),
        T.StructField("first_idx", T.LongType(), True),
        T.StructField("prev_pts", T.LongType(), True),
        T.StructField("last_idx", T.LongType(), True),
        T.StructField("seg_no", T.LongType(), True),
    ]
)

# Output of the video probe: work rows (one per segment) or one error row per video (stage set).
PLAN_SCHEMA = T.StructType(
    [
        *WORK_SCHEMA.fields,
        *_ERROR_FIELDS,
    ]
)

# What the listing and the decoder said about a frame's object, beside its identity: the object's own time
# (``{ts}`` of its key, else its last-modified; a frame folder without ``{ts}``: its earliest object's), which
# the incremental diff compares with the next listing, and the empty "dropped-frame" slots before the frame (AVI).
SOURCE_FIELDS = [
    T.StructField("object_ts", T.TimestampType(), True),
    T.StructField("dropped_frames", T.LongType(), True),
]

# Which TensorFlow and Keras computed a feature row (``tensorflow 2.21.0, keras 3.15.1``); null in rows of older stores.
FRAMEWORK_FIELD = T.StructField("framework", T.StringType(), True)
# featurizer.skip_static: null where the frame went through the model, else the frame_idx (same video) whose
# features it reuses because it hardly differed from that frame; null in rows of older stores.
FEATURES_FROM_FIELD = T.StructField("features_from_idx", T.LongType(), True)

FEATURES_SCHEMA = T.StructType(
    [
        *IDENTITY_FIELDS,
        T.StructField("features", T.ArrayType(T.FloatType(), False), False),
        T.StructField("featurizer", T.StringType(), False),
        *SOURCE_FIELDS,
        FRAMEWORK_FIELD,
        FEATURES_FROM_FIELD,
    ]
)

# errors/ is a history: each run appends its rows, partitioned like the other tables (the camera-local date of the
# object's time, or of its last-modified time when its key did not parse), so "this camera's errors this week" and
# "the last run's errors" (``run_id``) are filters.
ERRORS_SCHEMA = T.StructType(
    [
        T.StructField("uri", T.StringType(), False),
        T.StructField("stage", T.StringType(), False),
        T.StructField("error_type", T.StringType(), False),
        T.StructField("message", T.StringType(), True),
        T.StructField("run_id", T.StringType(), False),
        T.StructField("last_modified", T.TimestampType(), True),
        T.StructField("camera_id", T.StringType(), False),
        T.StructField("date", T.DateType(), False),
    ]
)

# Output of the featurize mapInPandas: a features row, or an error row (features null, stage set).
FEATURIZE_RESULT_SCHEMA = T.StructType(
    [
        *IDENTITY_FIELDS,
        T.StructField("features", T.ArrayType(T.FloatType(), False), True),
        T.StructField("featurizer", T.StringType(), True),
        *SOURCE_FIELDS,
        FRAMEWORK_FIELD,
        FEATURES_FROM_FIELD,
        *_ERROR_FIELDS,
    ]
)

# Probabilities are written as class name -> probability, so every row decodes by itself whichever model wrote it
# (``probabilities['person']`` in any SQL engine); in memory, between the model and the writer, they are arrays in
# the model's class order (_PROB_ARRAY).
_PROB = T.MapType(T.StringType(), T.DoubleType(), False)
_PROB_ARRAY = T.ArrayType(T.DoubleType(), False)
_LINEAGE_FIELDS = [
    T.StructField("model_id", T.StringType(), False),  # SHA-256 of the model's model.txt
    T.StructField("run_id", T.StringType(), False),
]

FRAME_PREDICTIONS_SCHEMA = T.StructType(
    [
        *[f for f in IDENTITY_FIELDS if f.name != "label"],
        T.StructField("probabilities", _PROB, False),
        T.StructField("predicted_label", T.StringType(), False),
        T.StructField("predicted_prob", T.DoubleType(), False),
        T.StructField("smoothed_probabilities", _PROB, False),
        T.StructField("smoothed_label", T.StringType(), False),
        T.StructField("smoothed_prob", T.DoubleType(), False),
        *SOURCE_FIELDS,
        T.StructField("label", T.StringType(), True),
        *_LINEAGE_FIELDS,
    ]
)

VIDEO_PREDICTIONS_SCHEMA = T.StructType(
    [
        T.StructField("camera_id", T.StringType(), False),
        T.StructField("video_id", T.StringType(), False),
        T.StructField("date", T.DateType(), False),
        T.StructField("start_ts", T.TimestampType(), False),
        T.StructField("end_ts", T.TimestampType(), False),
        T.StructField("n_frames", T.LongType(), False),
        T.StructField("dropped_frames", T.LongType(), False),
        T.StructField("label", T.StringType(), False),
        T.StructField("prob", T.DoubleType(), False),
        T.StructField("mean_probabilities", _PROB, False),
        T.StructField("raw_label_switches", T.LongType(), False),
        T.StructField("smoothed_label_switches", T.LongType(), False),
        *_LINEAGE_FIELDS,
    ]
)


def with_prob_arrays(schema: T.StructType) -> T.StructType:
    """``schema`` with its class-name maps as arrays in the model's class order (the in-memory form)."""
    return T.StructType([T.StructField(f.name, _PROB_ARRAY, f.nullable) if f.dataType == _PROB else f for f in schema.fields])


def prob_columns(schema: T.StructType) -> list[str]:
    """The class-name -> probability columns of a predictions schema."""
    return [f.name for f in schema.fields if f.dataType == _PROB]


PARTITION_COLUMNS = ("camera_id", "date")

# Presentation order of the frames of one video, whatever made it: the object (a video file, or a frame
# folder whose frames share one object time), the frame's time in it, its index, then the uri for ties.
PRESENTATION_ORDER = ["object_ts", "frame_ts", "frame_idx", "uri"]
