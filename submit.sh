#!/usr/bin/env bash
# submit.sh JOB [ARGS...]: run a vidspark job (featurize | train | predict | run) with spark-submit.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: submit.sh [--gpu] [--dry-run] JOB [JOB ARGS...]

JOB is featurize, train, predict or run; JOB ARGS are exactly those of `vidspark JOB`
(for example --input s3://bucket/cams --output s3a://bucket/vidspark/features --conf conf/cluster.yaml).

What it does:
  1. packs the vidspark package into dist/vidspark.zip and ships it with --py-files
     (executors import vidspark from it, not from whatever is installed on the nodes);
  2. ships the --conf YAML with --files, and turns its `spark:` section into --conf flags;
  3. runs $SPARK_SUBMIT with jobs/JOB.py and prints the exact command line first.

Environment:
  SPARK_MASTER        master URL (default local[*]): yarn, k8s://https://host:443, spark://host:7077
  SPARK_SUBMIT        spark-submit to use (default: the one inside the installed pyspark)
  SPARK_SUBMIT_ARGS   extra spark-submit arguments, e.g. "--deploy-mode cluster --conf spark.x=y"
  PYSPARK_PYTHON      Python on the executors, e.g. ./env/bin/python with a packed environment

Options:
  --gpu       add conf/gpu.yaml's Spark settings (GPU executors) when no --conf is given
  --dry-run   print the spark-submit command and stop

Cluster recipes (dependencies such as TensorFlow, LightGBM and PyAV must exist on the executors;
vidspark itself always comes from the zip):
  Packed environment:  python -m venv env && env/bin/pip install . venv-pack && env/bin/venv-pack -o env.tar.gz
                       SPARK_SUBMIT_ARGS="--archives env.tar.gz#env" PYSPARK_PYTHON=./env/bin/python \
                       SPARK_MASTER=yarn ./submit.sh run --input s3://cams/ --model /models/cars --output s3a://out/ --conf conf/cluster.yaml
  YARN:        SPARK_MASTER=yarn SPARK_SUBMIT_ARGS="--deploy-mode client --num-executors 8" ./submit.sh featurize ...
  Kubernetes:  SPARK_MASTER=k8s://https://api.example:6443 SPARK_SUBMIT_ARGS="--deploy-mode cluster \
                 --conf spark.kubernetes.container.image=registry/vidspark:0.1" ./submit.sh run ...
  Standalone:  SPARK_MASTER=spark://10.0.0.5:7077 ./submit.sh train --features ... --model ...
  GPU:         ./submit.sh --gpu featurize ... (or --conf conf/gpu.yaml): one GPU per executor,
               spark.task.resource.gpu.amount 0.25, discovery script, TF memory growth.
  Nightly:     cron  `30 2 * * * cd /opt/vidspark && SPARK_MASTER=yarn ./submit.sh run --input s3://cams/ \
                       --model /models/current --output s3a://lake/vidspark --conf conf/cluster.yaml`
               Airflow: SparkSubmitOperator(application="jobs/run.py", py_files="dist/vidspark.zip",
                        files="conf/cluster.yaml", application_args=["--input", ..., "--conf", "cluster.yaml"])
Exit codes are the job's: 0 ok, 2 bad arguments/conf, 3 storage unreachable, 4 too many bad inputs.
USAGE
}

here="$(cd "$(dirname "$0")" && pwd)"
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

python="${VIDSPARK_PYTHON:-$( [ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || command -v python3 )}"
submit="${SPARK_SUBMIT:-$("$python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit"))')}"

# 1. the package, zipped fresh so executors run exactly this checkout's code
mkdir -p "$here/dist"
"$python" - "$here" <<'PY'
import os, sys, zipfile
root = sys.argv[1]
with zipfile.ZipFile(os.path.join(root, "dist", "vidspark.zip.tmp"), "w", zipfile.ZIP_DEFLATED) as zf:
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, "vidspark")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in sorted(filenames):
            if name.endswith(".py"):
                full = os.path.join(dirpath, name)
                zf.write(full, os.path.relpath(full, root))
os.replace(os.path.join(root, "dist", "vidspark.zip.tmp"), os.path.join(root, "dist", "vidspark.zip"))
PY

# 2. the conf: shipped with --files; its spark: section becomes --conf flags
conf_file=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[$i]}" = "--conf" ] && [ $((i + 1)) -lt ${#args[@]} ]; then conf_file="${args[$((i + 1))]}"; fi
done
if [ -z "$conf_file" ] && [ "$gpu" = 1 ]; then
  conf_file="$here/conf/gpu.yaml"
  args+=(--conf "$conf_file")
fi
spark_confs=()
files=()
if [ -n "$conf_file" ]; then
  [ -f "$conf_file" ] || { echo "submit.sh: conf file '$conf_file' not found" >&2; exit 2; }
  files=(--files "$conf_file")
  while IFS= read -r line; do [ -n "$line" ] && spark_confs+=(--conf "$line"); done < <(
    "$python" - "$conf_file" <<'PY'
import sys, yaml
raw = yaml.safe_load(open(sys.argv[1])) or {}
for k, v in (raw.get("spark") or {}).items():
    print(f"{k}={str(v).lower() if isinstance(v, bool) else v}")
PY
  )
fi
master="${SPARK_MASTER:-local[*]}"
if [[ "$master" == local* ]] && [ -z "${PYSPARK_PYTHON:-}" ]; then
  export PYSPARK_PYTHON="$python"  # embedded runs: driver and workers on the same interpreter as the zip was made for
fi
if [[ " ${SPARK_SUBMIT_ARGS:-} " == *" --deploy-mode cluster "* ]] && [ -n "$conf_file" ]; then
  # In cluster mode the driver runs on a node where --files puts the conf in its working directory.
  for ((i = 0; i < ${#args[@]}; i++)); do
    if [ "${args[$i]}" = "--conf" ]; then args[$((i + 1))]="$(basename "$conf_file")"; fi
  done
fi
cmd=("$submit" --master "$master" --name "vidspark-$job" --py-files "$here/dist/vidspark.zip" "${files[@]}" "${spark_confs[@]}")
if [ -n "${PYSPARK_PYTHON:-}" ] && [[ "$master" != local* ]]; then
  cmd+=(--conf "spark.pyspark.python=$PYSPARK_PYTHON")
fi
# shellcheck disable=SC2206
extra=(${SPARK_SUBMIT_ARGS:-})
cmd+=("${extra[@]}" "$here/jobs/$job.py" "${args[@]}")

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
