"""Importing this module registers the tasks of every dataset under $DISTILL_DATA_DIR.

For upstream T5X, whose gin files name a module to import for its tasks
(`MIXTURE_OR_TASK_MODULE = 'distill.registered_tasks'`, see
gin_configs/t5x/finetune_distill.gin). distill's own entry points never
import it: they call `distill.tasks.register_tasks` for exactly the dataset
they train, so nothing registers twice and `distill.tasks` itself has no
import-time side effects. The vocabulary is $DISTILL_VOCABULARY (default:
the public T5 vocabulary, loaded lazily), the input prefixes
$DISTILL_LABEL_PREFIX / $DISTILL_RATIONALE_PREFIX (default `[label] ` /
`[rationale] `); prepared TFDS datasets under
$DISTILL_TFDS_DIR are used when present. Importing reads no data, needs no
network and never raises (see `register_from_environment`).
"""
from distill.tasks import register_from_environment

NAMES: list[str] = register_from_environment()
