"""taskexpert: K-shot guided task experts from open LoRA banks and open instruction data."""

from taskexpert.errors import InputError, TaskexpertError
from taskexpert.records import Record, read_records, write_records

__version__ = "0.1.0"
__all__ = ["InputError", "Record", "TaskexpertError", "read_records", "write_records"]
