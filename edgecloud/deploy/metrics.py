"""The metric catalogue as deploy's modules name it (`from edgecloud.deploy import metrics as m`).

The catalogue itself lives below both deploy and bench, in `edgecloud/metric_catalogue.py`.
"""

from edgecloud.metric_catalogue import *  # noqa: F403
