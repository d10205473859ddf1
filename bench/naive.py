"""The report's three functions without Prefect: the baseline for bench.py.

Usage: python bench/naive.py URL OUTPUT
"""
import json
import sys

import requests


def extract(url):
    resultado = requests.get(url)
    if not resultado:
        raise Exception("Datos no obtenidos.")
    return json.loads(resultado.content)


def transform(usuarios):
    transformados = []
    for usuario in usuarios:
        transformados.append({"UsuarioID": usuario["userId"], "ID": usuario["id"],
                              "Titulo": usuario["title"], "Completado": usuario["completed"]})
    return transformados


def load(datos, path):
    with open(path, "w", encoding="utf-8") as archivo:
        json.dump(datos, archivo, indent=4, ensure_ascii=False)


if __name__ == "__main__":
    load(transform(extract(sys.argv[1])), sys.argv[2])
