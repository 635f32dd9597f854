# Sourced by gpu_run.sh and gpu_methods.sh: the package and what the machine lacks, installed under /tmp,
# and `step`, which runs a command under its own time limit. Needs OUT and DEV set; run from the project root.
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1

step() {  # step NAME SECONDS COMMAND...: run it under its limit, say how it ended
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    echo "== $name (limit ${limit} s)"
    timeout "$limit" "$@"
    echo "== $name: rc $? in $((SECONDS - t0)) s"
}

# the package as its pyproject lays it out (mitoqp.runtime and mitoqp.export from their top-level folders),
# and the wheels where tiffslide is missing
SITE=/tmp/mitoqp-site
rm -rf "$SITE" && mkdir -p "$SITE"
python3 -c 'import tiffslide' 2>/dev/null ||
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$DEV"/whl/*.whl
mkdir -p "$SITE/bin"
[ -d "$DEV/site" ] && cp -r "$DEV"/site/* "$SITE"/  # the slim imagecodecs, where slides are read
cp -r mitoqp "$SITE"/ && cp -r runtime "$SITE"/mitoqp/runtime && cp -r export "$SITE"/mitoqp/export
printf '#!/bin/sh\nexec python3 -c "import sys; from mitoqp.cli import main; sys.exit(main())" "$@"\n' > "$SITE/bin/mitoqp"
chmod +x "$SITE/bin/mitoqp"
export PYTHONPATH="$SITE" PATH="$SITE/bin:$PATH"
