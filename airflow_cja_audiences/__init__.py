"""Apache Airflow provider: keep Adobe Customer Journey Analytics in sync with AEP audiences.

Importing this package must stay cheap: Airflow calls :func:`get_provider_info` in every process.
"""

from __future__ import annotations

__version__ = "0.1.0"

CONN_TYPE = "adobe_experience_platform"
DEFAULT_CONN_ID = "adobe_experience_platform_default"


def _string(label: str, description: str, *, default: str | None = None, fmt: str | None = None) -> dict:
    schema: dict = {"type": ["string", "null"]}
    if default is not None:
        schema["default"] = default
    if fmt is not None:
        schema["format"] = fmt
    return {"label": label, "description": description, "schema": schema}


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-cja-audiences",
        "name": "Adobe CJA Audiences",
        "description": "Keep Adobe Customer Journey Analytics in sync with Adobe Experience Platform "
        "audience memberships.",
        "integrations": [
            {
                "integration-name": "Adobe Experience Platform",
                "external-doc-url": "https://experienceleague.adobe.com/en/docs/experience-platform",
                "tags": ["service"],
            }
        ],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": "airflow_cja_audiences.hooks.platform.AdobePlatformHook",
                "hook-name": "Adobe Experience Platform",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "host"],
                    "relabeling": {"login": "Client ID", "password": "Client secret"},
                    "placeholders": {
                        "login": "Developer Console OAuth Server-to-Server client id",
                        "password": "client secret",
                    },
                },
                "conn-fields": {
                    "org_id": _string("IMS org ID", "Your organization id, ending in @AdobeOrg"),
                    "sandbox": _string("Sandbox", "AEP sandbox name (lower case)", default="prod"),
                    "scopes": _string(
                        "Scopes",
                        "Comma-separated OAuth scopes copied from Developer Console",
                        default="openid,session,AdobeID,read_organizations,"
                        "additional_info.projectedProductContext",
                    ),
                    "ims_url": _string(
                        "IMS URL",
                        "Override of the IMS base URL",
                        default="https://ims-na1.adobelogin.com",
                        fmt="url",
                    ),
                    "platform_url": _string(
                        "Platform URL",
                        "Override of the Platform API gateway URL",
                        default="https://platform.adobe.io",
                        fmt="url",
                    ),
                    "cja_url": _string(
                        "CJA URL",
                        "Override of the Customer Journey Analytics API URL",
                        default="https://cja.adobe.io",
                        fmt="url",
                    ),
                    "ui_url": _string(
                        "AEP UI URL",
                        "Base of the links to AEP UI pages shown on task pages",
                        default="https://experience.adobe.com/#/platform",
                        fmt="url",
                    ),
                    "query_service_host": _string(
                        "Query Service host",
                        "PostgreSQL host of Query Service (default: asked from the Query Service API)",
                    ),
                    "query_service_port": {
                        "label": "Query Service port",
                        "description": "Default 80",
                        "schema": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535},
                    },
                    "query_service_database": _string(
                        "Query Service database",
                        "Default '{sandbox}:all' (only 'prod:all' is confirmed by Adobe's docs)",
                    ),
                    "ca_bundle": _string(
                        "CA bundle path",
                        "PEM file of extra CAs to trust (e.g. the "
                        "emulator's); TLS verification is never turned off",
                    ),
                    "timeout": {
                        "label": "HTTP timeout (s)",
                        "description": "Per request",
                        "schema": {"type": ["number", "null"], "default": 60, "minimum": 1},
                    },
                    "call_deadline": {
                        "label": "Call deadline (s)",
                        "description": "Wall-clock bound on one API call, retries and waits included",
                        "schema": {"type": ["number", "null"], "default": 600, "minimum": 1},
                    },
                    "max_response_bytes": {
                        "label": "Largest answer (bytes)",
                        "description": "A larger answer fails the call instead of filling memory",
                        "schema": {"type": ["integer", "null"], "default": 67108864, "minimum": 1},
                    },
                    "max_pages": {
                        "label": "Most pages per list",
                        "description": "A list call reading more pages fails (a list that never ends)",
                        "schema": {"type": ["integer", "null"], "default": 1000, "minimum": 1},
                    },
                },
            }
        ],
        "extra-links": [
            "airflow_cja_audiences.links.AepDatasetLink",
            "airflow_cja_audiences.links.AepBatchLink",
            "airflow_cja_audiences.links.AepExportJobLink",
        ],
        "triggers": [
            {
                "integration-name": "Adobe Experience Platform",
                "python-modules": ["airflow_cja_audiences.triggers.aep"],
            }
        ],
        "operators": [
            {
                "integration-name": "Adobe Experience Platform",
                "python-modules": [
                    "airflow_cja_audiences.operators.setup",
                    "airflow_cja_audiences.operators.export",
                    "airflow_cja_audiences.operators.load",
                    "airflow_cja_audiences.operators.publish",
                    "airflow_cja_audiences.operators.report",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "Adobe Experience Platform",
                "python-modules": ["airflow_cja_audiences.sensors.aep"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Adobe Experience Platform",
                "python-modules": [
                    "airflow_cja_audiences.hooks.platform",
                    "airflow_cja_audiences.hooks.catalog",
                    "airflow_cja_audiences.hooks.segmentation",
                    "airflow_cja_audiences.hooks.schema_registry",
                    "airflow_cja_audiences.hooks.ingestion",
                    "airflow_cja_audiences.hooks.cja",
                    "airflow_cja_audiences.hooks.query_service",
                ],
            }
        ],
    }
