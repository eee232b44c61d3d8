"""Fault injection against a running gateway: a streaming load that tells lost requests from streams the
gateway ended with an error event, the gateway's own figures read from its /metrics, and samples of its
process's memory and open files."""

from loadtest.faults.client import Outcome, RequestRecord, StreamLoad, tally
from loadtest.faults.gauges import GatewayGauges, ProcessSampler, slope_per_minute

__all__ = [
    "GatewayGauges",
    "Outcome",
    "ProcessSampler",
    "RequestRecord",
    "StreamLoad",
    "slope_per_minute",
    "tally",
]
