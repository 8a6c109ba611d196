#!/usr/bin/env bash
# submit.sh JOB [ARGS...]: run a vidspark job (featurize | train | predict | run) with spark-submit,
# shipping what `make dist` built. It builds and writes nothing, so two can run at once.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's/^__version__ = "\([^"]*\)"$/\1/p' "$here/vidspark/__init__.py")"

usage() {
  sed "s/@VERSION@/$version/g" <<'USAGE'
Usage: submit.sh [--gpu] [--dry-run] JOB [JOB ARGS...]

JOB is featurize, train, predict or run; JOB ARGS are exactly those of `vidspark JOB`
(for example --input s3://bucket/cams --output s3a://bucket/vidspark/features --conf conf/cluster.yaml).

Build once with `make dist` (again after a change: it rebuilds only what changed):
  dist/vidspark-@VERSION@-py3-none-any.whl  vidspark itself
  dist/vidspark-@VERSION@-env.tar.gz        the executors' Python (venv-pack): vidspark's dependencies
                                             pinned by constraints.txt, no pyspark (Spark brings its own)
What submit.sh does, building and writing nothing (two can run at once, e.g. from cron):
  1. ships the wheel with --py-files and puts it on the executors' PYTHONPATH (PySpark adds only
     .zip/.egg py-files there), so driver and executors run this one copy of vidspark;
  2. ships the packed env with --archives ...#env and runs the executors' Python from it
     (spark.pyspark.python=./env/bin/python; in cluster deploy mode the driver's too, while a
     client-mode driver runs this machine's Python); local masters use this machine's Python only;
  3. ships the --conf YAML with --files and turns its `spark:` section into --conf flags;
  4. runs spark-submit with jobs/JOB.py, printing the exact command line first (secrets masked).

Environment:
  SPARK_MASTER           master URL (default local[*]): yarn, k8s://https://host:443, spark://host:7077
  SPARK_SUBMIT           spark-submit to use (default: the one of VIDSPARK_PYTHON's pyspark)
  SPARK_SUBMIT_ARGS      extra spark-submit arguments, placed last so they win, e.g. "--deploy-mode cluster"
  VIDSPARK_DIST          folder holding the wheel and the env (default: dist/ beside this script),
                         e.g. a release downloaded from an artifact store
  VIDSPARK_ENV           the env archive to ship instead: a local path, or a URI the cluster fetches
                         (https://, hdfs://, s3a://); `none` when the nodes have the dependencies
  VIDSPARK_PYTHON        this machine's Python: reads the conf, runs a client-mode driver (default .venv/bin/python)
  PYSPARK_PYTHON         the executors' Python instead of ./env/bin/python, e.g. an image's /opt/venv/bin/python
  PYSPARK_DRIVER_PYTHON  a client-mode driver's Python (default VIDSPARK_PYTHON)

Options:
  --gpu       add conf/gpu.yaml's Spark settings (GPU executors); the --conf file's own spark: settings win
  --dry-run   print the spark-submit command and stop

Cluster recipes. `make dist` first. Every node needs Spark 3.5 or 4.x and the Python the env was
built with (same minor version, same path; `make dist ENV_PYTHON=/usr/bin/python3.11` points the env
at another path). Paths given to the job (--model, --output) must be reachable from the cluster.
  YARN:        SPARK_MASTER=yarn SPARK_SUBMIT_ARGS="--deploy-mode cluster --num-executors 8" ./submit.sh run \
                 --input s3://cams/ --model s3a://models/current --output s3a://lake/vidspark --conf conf/cluster.yaml
  Standalone:  SPARK_MASTER=spark://10.0.0.5:7077 ./submit.sh train --features s3a://lake/vidspark/features \
                 --model s3a://models/next --conf conf/cluster.yaml
               (client deploy mode: Spark runs no Python driver inside a standalone cluster)
  Kubernetes:  cluster deploy mode. spark-submit uploads the wheel, the conf and jobs/JOB.py to
               spark.kubernetes.file.upload.path; the env (800 MB) is put once where the pods fetch it.
               The image: Spark 3.5/4.x with hadoop-aws and the AWS SDK bundle in /opt/spark/jars (the
               pods read s3a://) and Python 3.11 at /usr/bin/python3.11. The submitting machine runs the
               same Spark; --packages gives it the hadoop-aws of that Spark's Hadoop (the version of
               $SPARK_HOME/jars/hadoop-client-api-*.jar: 3.3.4 on Spark 3.5).
                 make dist ENV_PYTHON=/usr/bin/python3.11
                 aws s3 cp dist/vidspark-@VERSION@-env.tar.gz s3://my-bucket/vidspark/
                 SPARK_MASTER=k8s://https://k8s-api.example:6443 \
                 VIDSPARK_ENV=s3a://my-bucket/vidspark/vidspark-@VERSION@-env.tar.gz \
                 SPARK_SUBMIT_ARGS="--deploy-mode cluster --packages org.apache.hadoop:hadoop-aws:3.3.4 \
                   --conf spark.jars.ivy=/tmp/.ivy2 \
                   --conf spark.kubernetes.container.image=registry.example/spark-py311:3.5.6 \
                   --conf spark.kubernetes.authenticate.driver.serviceAccountName=spark \
                   --conf spark.kubernetes.file.upload.path=s3a://my-bucket/spark-upload" \
                 ./submit.sh run --input s3://cams/ --model s3a://models/current --output s3a://lake/vidspark \
                   --conf conf/cluster.yaml
               S3 credentials: the default AWS chain on both sides (IRSA for the pods' service account).
  GPU:         ./submit.sh --gpu featurize ... --conf conf/cluster.yaml: gpu.yaml's Spark settings (one GPU
               per executor, discovery script) under cluster.yaml's; the featurize stage alone asks for a GPU
               share (featurizer.task_gpus; auto: the executor's GPU over its tasks); conf/gpu.yaml alone
               (--conf conf/gpu.yaml) also sets the GPU featurizer (precision auto, batch 256, a quarter GPU a task).
  Nightly:     cron  `30 2 * * * cd /opt/vidspark && SPARK_MASTER=yarn ./submit.sh run --input s3://cams/ \
                       --model s3a://models/current --output s3a://lake/vidspark --conf conf/cluster.yaml`
               Airflow: SparkSubmitOperator(application="jobs/run.py", py_files="dist/vidspark-@VERSION@-py3-none-any.whl",
                        archives="dist/vidspark-@VERSION@-env.tar.gz#env", files="conf/cluster.yaml",
                        conf={"spark.pyspark.python": "./env/bin/python",  # executors
                              "spark.pyspark.driver.python": "/opt/vidspark/.venv/bin/python",  # client mode
                              "spark.executorEnv.PYTHONPATH": "vidspark-@VERSION@-py3-none-any.whl"},
                        application_args=["--input", ..., "--conf", "cluster.yaml"])
Exit codes are the job's: 0 ok, 2 bad arguments/conf/missing dist, 3 storage unreachable, 4 too many bad inputs.
USAGE
}

gpu=0
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --gpu) gpu=1; shift ;;
    --dry-run) dry=1; shift ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { usage >&2; exit 2; }
job="$1"; shift
case "$job" in
  featurize|train|predict|run) ;;
  *) echo "submit.sh: unknown job '$job' (featurize, train, predict, run)" >&2; exit 2 ;;
esac
[ -n "$version" ] || { echo "submit.sh: no __version__ in $here/vidspark/__init__.py" >&2; exit 2; }

python="${VIDSPARK_PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || command -v python3 )}"

# 1. what `make dist` built: the wheel always, the packed env when there is one (or VIDSPARK_ENV)
dist="${VIDSPARK_DIST:-$here/dist}"
dist="$(cd "$dist" 2>/dev/null && pwd || echo "$dist")"
wheel="$dist/vidspark-$version-py3-none-any.whl"
[ -f "$wheel" ] || { echo "submit.sh: $wheel not found: run \`make dist\` (or set VIDSPARK_DIST to a folder holding it)" >&2; exit 2; }
env_archive="${VIDSPARK_ENV:-}"
if [ -z "$env_archive" ] && [ -f "$dist/vidspark-$version-env.tar.gz" ]; then env_archive="$dist/vidspark-$version-env.tar.gz"; fi
if [ "$env_archive" = none ]; then env_archive=""; fi
if [ -n "$env_archive" ] && [[ "$env_archive" != *://* ]] && [ ! -f "$env_archive" ]; then
  echo "submit.sh: VIDSPARK_ENV '$env_archive' not found: run \`make dist\`, or give a URI, or none" >&2
  exit 2
fi

# 2. the conf: shipped with --files; its spark: section (over gpu.yaml's with --gpu) becomes --conf flags
args=("$@")
conf_file=""
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --conf) if [ $((i + 1)) -lt ${#args[@]} ]; then conf_file="${args[$((i + 1))]}"; fi ;;
    --conf=*) conf_file="${args[$i]#--conf=}" ;;
  esac
done
spark_conf_files=()
if [ "$gpu" = 1 ]; then spark_conf_files+=("$here/conf/gpu.yaml"); fi
if [ -z "$conf_file" ] && [ "$gpu" = 1 ]; then
  conf_file="$here/conf/gpu.yaml"
  args+=(--conf "$conf_file")
elif [ -n "$conf_file" ]; then
  spark_conf_files+=("$conf_file")
fi
spark_confs=()
files=()
if [ -n "$conf_file" ]; then
  [ -f "$conf_file" ] || { echo "submit.sh: conf file '$conf_file' not found" >&2; exit 2; }
  files=(--files "$conf_file")
  while IFS= read -r line; do [ -n "$line" ] && spark_confs+=(--conf "$line"); done < <(
    "$python" - "${spark_conf_files[@]}" <<'PY'
import sys, yaml
merged = {}
for path in sys.argv[1:]:  # later files win
    merged.update((yaml.safe_load(open(path)) or {}).get("spark") or {})
for k, v in merged.items():
    print(f"{k}={str(v).lower() if isinstance(v, bool) else v}")
PY
  )
fi

master="${SPARK_MASTER:-local[*]}"
cluster_mode=0
if [[ " ${SPARK_SUBMIT_ARGS:-} " =~ [[:space:]](--deploy-mode[=[:space:]]+cluster|spark\.submit\.deployMode=cluster)[[:space:]] ]]; then cluster_mode=1; fi
if [ "$cluster_mode" = 1 ] && [ -n "$conf_file" ]; then
  # In cluster mode the driver runs on a node where --files puts the conf in its working directory.
  for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
      --conf) if [ $((i + 1)) -lt ${#args[@]} ]; then args[$((i + 1))]="$(basename "$conf_file")"; fi ;;
      --conf=*) args[$i]="--conf=$(basename "$conf_file")" ;;
    esac
  done
fi

cmd=("${SPARK_SUBMIT:-}" --master "$master" --name "vidspark-$job" --py-files "$wheel")
if [[ "$master" == local* ]]; then
  # Embedded runs: driver and Python workers on this machine's interpreter, vidspark from the wheel.
  export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$python}"
  cmd+=(--conf "spark.executorEnv.PYTHONPATH=$wheel")
else
  # Executors fetch --py-files into their working directory; PySpark puts only .zip/.egg ones on sys.path.
  cmd+=(--conf "spark.executorEnv.PYTHONPATH=$(basename "$wheel")")
  worker_python="${PYSPARK_PYTHON:-}"
  if [ -n "$env_archive" ]; then
    cmd+=(--archives "$env_archive#env")
    worker_python="${worker_python:-./env/bin/python}"
  fi
  if [ -n "$worker_python" ]; then cmd+=(--conf "spark.pyspark.python=$worker_python"); fi
  if [ "$cluster_mode" = 1 ]; then
    if [ -n "$worker_python" ]; then cmd+=(--conf "spark.pyspark.driver.python=$worker_python"); fi
  else
    cmd+=(--conf "spark.pyspark.driver.python=${PYSPARK_DRIVER_PYTHON:-$python}")
  fi
fi
cmd+=("${files[@]}" "${spark_confs[@]}")
# shellcheck disable=SC2206
extra=(${SPARK_SUBMIT_ARGS:-})
cmd+=("${extra[@]}" "$here/jobs/$job.py" "${args[@]}")
if [ -z "${cmd[0]}" ]; then
  cmd[0]="$("$python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit"))' 2>/dev/null)" ||
    { echo "submit.sh: no pyspark for $python: set SPARK_SUBMIT to your Spark's bin/spark-submit" >&2; exit 2; }
fi

# Print the line with secret-looking values masked (same pattern as vidspark's conf redaction).
secret_re='(secret|passw|token|credential|private|access[_.-]?key|account\.key|encryption\.key|[._-]key=|signature)'
printf 'submit.sh: running:'
for word in "${cmd[@]}"; do
  if [[ "$word" == *=* ]] && [[ "${word%%=*}=" =~ $secret_re ]]; then word="${word%%=*}=***"; fi
  printf ' %q' "$word"
done
printf '\n'
[ "$dry" = 1 ] && exit 0
exec "${cmd[@]}"
