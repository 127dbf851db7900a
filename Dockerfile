# syntax=docker/dockerfile:1
# One image for the api, worker and flower services of docker-compose.yml; each picks its
# command there.

FROM python:3.11.13-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A virtualenv that the runtime stage copies whole: no compiler, pip cache or sources there.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The production set of requirements.lock, exact versions checked by hash (the ones CI
# tested), in a layer of its own that a code change does not rebuild.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
# Then the project alone, built with the locked setuptools: nothing re-resolved.
COPY pyproject.toml README.md celeryconfig.py ./
COPY neoforge/ neoforge/
COPY tasks/ tasks/
COPY templates/ templates/
RUN pip install --no-cache-dir --no-deps --no-build-isolation .


FROM python:3.11.13-slim-bookworm

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TEMPLATES_DIR=/app/templates

RUN groupadd --system --gid 10001 neoforge \
    && useradd --system --uid 10001 --gid neoforge --no-create-home --shell /usr/sbin/nologin neoforge

COPY --from=build /opt/venv /opt/venv
# Templates live outside site-packages so that TEMPLATES_DIR names one obvious place to
# mount your own over them.
COPY templates/ /app/templates/

WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 8000 5555

# The api's default; compose gives worker and flower their own command and health check.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]

CMD ["neoforge", "serve", "--host", "0.0.0.0", "--port", "8000"]
