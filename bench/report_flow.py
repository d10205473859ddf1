"""The report's Prefect 1 flow, run once: the baseline for bench.py.

The report's three functions (naive.py) as Prefect tasks, in the report's flow.
Usage: python bench/report_flow.py URL OUTPUT
"""
import datetime
import sys

from prefect import Flow, Parameter, task

import naive

extract = task(max_retries=10, retry_delay=datetime.timedelta(seconds=10))(naive.extract)
transform = task(naive.transform)
load = task(naive.load)

with Flow("etl_flow") as flow:
    url = Parameter(name="parametro_url", required=True)
    load(transform(extract(url)), sys.argv[2])

if __name__ == "__main__":
    state = flow.run(parameters={"parametro_url": sys.argv[1]})
    sys.exit(0 if state.is_successful() else 1)
