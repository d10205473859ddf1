"""What the database modules share: the table's columns, quoted names, and records as rows."""
from operator import itemgetter
from typing import Iterator

from etl.records import BATCH, RENAME

COLUMNS = tuple(RENAME.values())  # "UsuarioID", "ID", "Titulo", "Completado"
row_values = itemgetter(*COLUMNS)  # a record's values, in column order


def quote(name: str) -> str:
    """name as an SQL identifier, quoted."""
    return '"' + name.replace('"', '""') + '"'


def batches(records: list) -> Iterator[list]:
    for start in range(0, len(records), BATCH):
        yield records[start:start + BATCH]
