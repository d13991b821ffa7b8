# Sourced by run_all.sh, test.sh and lab.sh *before* they change directory: a relative $CLOUD_DATA_MIRROR
# (e.g. the README's ../shared/data) is resolved against the directory the command was started from, once, and
# passed on absolute, so the notebooks (which run in notebooks/) and every child process see the same folder.
if [ -n "${CLOUD_DATA_MIRROR:-}" ] && [ "${CLOUD_DATA_MIRROR#/}" = "$CLOUD_DATA_MIRROR" ]; then
  if [ -d "$CLOUD_DATA_MIRROR" ]; then
    CLOUD_DATA_MIRROR="$(cd "$CLOUD_DATA_MIRROR" && pwd)"
  else
    echo "warning: CLOUD_DATA_MIRROR=$CLOUD_DATA_MIRROR is not a folder (seen from $(pwd))" >&2
    CLOUD_DATA_MIRROR="$(pwd)/$CLOUD_DATA_MIRROR"
  fi
  export CLOUD_DATA_MIRROR
fi
