# A stand-in for the public postgres:15-bookworm image, for machines that cannot pull it:
# Debian's PostgreSQL 15 on the local base (docker/make-base.sh), with the same contract that
# compose.yaml relies on: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB make the role and the
# database on first start, data in /var/lib/postgresql/data, pg_isready, port 5432.
# Built by `LOCAL_BASE=1 bash docker/build.sh`; used via POSTGRES_IMAGE=localhost/kdsweep-postgres:15.
ARG BASE=localhost/kdsweep-base:bookworm
FROM ${BASE}
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-local-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
EXPOSE 5432
ENTRYPOINT ["bash", "/usr/local/bin/postgres-entrypoint.sh"]
