"""The report's Prefect 1 flow, run once: the baseline for bench.py.

Usage: python bench/report_flow.py URL OUTPUT
"""
import datetime
import json
import sys

import requests
from prefect import Flow, Parameter, task


@task(max_retries=10, retry_delay=datetime.timedelta(seconds=10))
def extract(url):
    resultado = requests.get(url)
    if not resultado:
        raise Exception("Datos no obtenidos.")
    return json.loads(resultado.content)


@task
def transform(usuarios):
    transformados = []
    for usuario in usuarios:
        transformados.append({"UsuarioID": usuario["userId"], "ID": usuario["id"],
                              "Titulo": usuario["title"], "Completado": usuario["completed"]})
    return transformados


@task
def load(datos, path):
    with open(path, "w", encoding="utf-8") as archivo:
        json.dump(datos, archivo, indent=4, ensure_ascii=False)


with Flow("etl_flow") as flow:
    url = Parameter(name="parametro_url", required=True)
    load(transform(extract(url)), sys.argv[2])

if __name__ == "__main__":
    state = flow.run(parameters={"parametro_url": sys.argv[1]})
    sys.exit(0 if state.is_successful() else 1)
