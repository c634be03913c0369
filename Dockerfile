# The software of every lvmbench job, as one image: Python 3.11, torch, lvmbench with the
# workflow's Python side (snakemake). README.md, "Containers", says how Snakemake runs the
# jobs in it (--software-deployment-method apptainer with the config key container).
#
#   docker build --build-arg LVMBENCH_COMMIT=$(git rev-parse HEAD) -t lvmbench:0.1.0 .
#   # torch for a CUDA driver (see https://pytorch.org for the index of your CUDA version):
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 \
#                --build-arg LVMBENCH_COMMIT=$(git rev-parse HEAD) -t lvmbench:0.1.0-cu126 .
#   apptainer build lvmbench.sif docker-daemon://lvmbench:0.1.0
FROM python:3.11-slim

# The CPU build of torch by default (small, and what a machine without a GPU needs).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=
# The git commit the image was built from: the image holds no checkout, so the runs'
# provenance (train.json, eval.json) records this one.
ARG LVMBENCH_COMMIT=
ENV LVMBENCH_GIT_COMMIT=${LVMBENCH_COMMIT} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

RUN pip install "torch${TORCH_VERSION:+==${TORCH_VERSION}}" --index-url "${TORCH_INDEX}"

WORKDIR /opt/lvmbench
COPY pyproject.toml README.md LICENSE ./
COPY lvmbench ./lvmbench
RUN pip install ".[pipeline,slurm]" && lvmbench --version && lvmbench list > /dev/null

# Jobs run as whichever user Snakemake or apptainer runs them as; nothing is written here.
CMD ["lvmbench", "--help"]
