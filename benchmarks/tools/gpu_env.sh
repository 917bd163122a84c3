#!/usr/bin/env bash
# mixerlab's Python dependencies on a lent GPU machine, whose image has torch (Python 3.12) but not all of them.
#
#   bash benchmarks/tools/gpu_env.sh wheels            # here, once: the wheels of every group below -> .whl/
#   source benchmarks/tools/gpu_env.sh install [DIR]   # there, first thing in a call that carries .whl:
#                                                      # installs into DIR (default /tmp/site) each group whose
#                                                      # module the image cannot import, and exports PYTHONPATH
#
# A group is installed only where its module is missing, so the image's own builds (torch's numpy, its typer)
# are never shadowed. The loop needs more than an evaluation: `mixerlab discover` imports SQLAlchemy, PyYAML,
# pandas and httpx, which the image lacked on 6 Dec 2026 (a loop call failed on `import sqlalchemy`).
# Versions are those the CPU suite runs with where the index has them for CPython 3.12 on manylinux x86_64 (pandas:
# 2.3.2, the newest there; SQLAlchemy without greenlet, which only its asyncio needs).

# module to import | the wheels that provide it (and what they need that the image may lack)
GPU_ENV_GROUPS=(
    "pydantic|pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5"
    "sqlalchemy|sqlalchemy==2.1.9"
    "yaml|pyyaml==6.0.4"
    "tabulate|tabulate==0.10.0"
    "httpx|httpx==0.29.0 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 certifi==2026.10.19.post1 idna==3.21"
    "jinja2|jinja2==3.1.6 markupsafe==3.0.4"
    "pygments|pygments==2.21.0"
    "pandas|pandas==2.3.2 python-dateutil==4.0.0 tzdata==2026.6 pytz==2025.2"
    "fla|fla-core==0.6.0 einops==0.8.2"
    "pytest|pytest==8.4.2 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.4 pytest-timeout==2.4.0"
)

gpu_env_wheels() {
    local group specs=()
    for group in "${GPU_ENV_GROUPS[@]}"; do read -ra parts <<< "${group#*|}"; specs+=("${parts[@]}"); done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${specs[@]}" || return 1
    mkdir -p .git/info
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    du -sh .whl
}

gpu_env_install() {
    local site=${1:-/tmp/site} group module spec name files=() missing=()
    for group in "${GPU_ENV_GROUPS[@]}"; do
        module=${group%%|*}
        python3 -c "import $module" 2>/dev/null && continue
        missing+=("$module")
        for spec in ${group#*|}; do
            name=${spec%%==*}; name=${name//-/_}
            # wheel file names keep the project's case (SQLAlchemy, PyYAML): match without it
            files+=($(find .whl -maxdepth 1 -iname "${name}-${spec#*==}-*.whl"))
        done
    done
    if [ ${#files[@]} -gt 0 ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${files[@]}" \
            || { echo "gpu_env: pip could not install ${missing[*]} from .whl (run \`bash benchmarks/tools/gpu_env.sh wheels\` here and carry .whl)" >&2; return 1; }
    fi
    echo "gpu_env: installed into $site for the missing modules: ${missing[*]:-none}"
    export PYTHONPATH="$site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
}

case "${1:-}" in
wheels) gpu_env_wheels ;;
install) gpu_env_install "${2:-}" ;;
*) echo "usage: bash $0 wheels | source $0 install [DIR]" >&2; return 2 2>/dev/null || exit 2 ;;
esac
