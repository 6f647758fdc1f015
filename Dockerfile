# The official Airflow image plus this provider and the AEP emulator (two distributions of this
# repository), pinned to the versions the tests run with (requirements/constraints.txt).
# docker-compose.yaml builds it once for every Airflow service and for the AEP emulator service.
FROM apache/airflow:3.3.2-python3.11

# Only what the package builds need, so editing tests or docs does not invalidate this layer.
COPY --chown=airflow:root pyproject.toml README.md /opt/airflow/src/airflow-cja-audiences/
COPY --chown=airflow:root requirements/constraints.txt /opt/airflow/src/airflow-cja-audiences/requirements/
COPY --chown=airflow:root airflow_cja_audiences /opt/airflow/src/airflow-cja-audiences/airflow_cja_audiences
COPY --chown=airflow:root aep-emulator/pyproject.toml aep-emulator/README.md /opt/airflow/src/aep-emulator/
COPY --chown=airflow:root aep-emulator/aep_emulator /opt/airflow/src/aep-emulator/aep_emulator

# apache-airflow is named with the image's own version so the constraints can never move Airflow
# itself; [celery] brings the Celery executor pinned as tested, [emulator] the local AEP emulator:
# its distribution (aep-emulator) is installed from the copy above in the same pip call, so the
# extra's pin resolves to it and no index is asked for it.
RUN pip install --no-cache-dir \
        --constraint /opt/airflow/src/airflow-cja-audiences/requirements/constraints.txt \
        "apache-airflow==${AIRFLOW_VERSION}" \
        /opt/airflow/src/aep-emulator \
        "/opt/airflow/src/airflow-cja-audiences[emulator,celery]" \
 && mkdir -p /opt/airflow/emulator
# /opt/airflow/emulator exists (owned by airflow) so the named volume mounted there inherits that
# owner: the emulator writes its CA bundle and ready file into it, the Airflow services read them.

COPY --chown=airflow:root dags /opt/airflow/dags
