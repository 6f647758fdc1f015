"""The pipeline's decisions, as plain functions over values and the hooks' pydantic models (pure).

No module here imports Airflow. The operators (``airflow_cja_audiences.operators``) are adapters: they
read parameters and XCom, call the hooks and these functions, and translate what these functions raise
into Airflow's vocabulary (``AirflowFailException`` with the typed cause chained, retry, reschedule,
skip). A decision that must look something up in AEP takes the hook as a small ``typing.Protocol``
(:mod:`.ports`), so a test passes a fake of a few lines instead of starting Airflow.

* :mod:`.refusals`  the typed errors these decisions raise (permanent: a retry cannot change them)
* :mod:`.reattach`  an export task's retry re-attaches to the job it started instead of a second one
* :mod:`.exported`  a finished export job's verdict, the batch it wrote, the export task's result
* :mod:`.batches`   which batches of a dataset a label replaces; the events batches of a job
* :mod:`.replace`   publish: overlap check, shrink guard, Catalog's verdict, what to revert afterwards
* :mod:`.prepare`   before a load: the export is still live and identified, the batch still open,
                    the partition plan, the target batch (replay), the export history and the
                    snapshot's per-audience counts
* :mod:`.events`    an events run: the interval it publishes (hull), what it replaces and reads, its
                    guard and counts, and who goes first when runs overlap (:class:`.events.GiveWay`)
* :mod:`.distill`   the server path: a retry re-attaches to its batch query by name, the batch a
                    query wrote, an events query's claim checked after submitting
* :mod:`.split`     a partition over Query Service's limits is split in two, recursively
* :mod:`.setup`     resolve/ensure steps: earlier snapshots' exports, shared datasets, tenant, run plan
"""
