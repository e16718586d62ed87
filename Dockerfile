# One image for every GridDispatch service: `griddispatch serve <service>`, `griddispatch
# migrate`, and the operator CLI. Multi-stage: dependencies are resolved from the runtime lock
# file in a builder, and only the virtual environment and the code reach the final image,
# which runs as an unprivileged user with a read-only root filesystem (see deploy/k8s).
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/griddispatch && /opt/griddispatch/bin/pip install uv==0.13.9
WORKDIR /src
COPY requirements.runtime.lock ./
RUN /opt/griddispatch/bin/uv pip sync --python /opt/griddispatch/bin/python requirements.runtime.lock
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
RUN /opt/griddispatch/bin/uv pip install --python /opt/griddispatch/bin/python --no-deps . \
    && /opt/griddispatch/bin/python -m compileall -q /opt/griddispatch/lib

FROM python:3.11-slim
RUN groupadd --gid 10001 griddispatch \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin griddispatch
COPY --from=build /opt/griddispatch /opt/griddispatch
ENV PATH=/opt/griddispatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRIDDISPATCH_LOG_JSON=true
USER 10001:10001
EXPOSE 8080 8081 8082 8083
ENTRYPOINT ["griddispatch"]
CMD ["--help"]
