"""Typed errors. Every error names the input it is about (``.input``) so batch jobs can report per row.

The one error hierarchy of the project: everything cloudlib raises on purpose is a :class:`CloudError`."""

from __future__ import annotations


class CloudError(Exception):
    """Base class for cloudlib errors; ``input`` names the offending input (path, id or string)."""

    def __init__(self, message: str, input: object = None):  # noqa: A002 - the word users expect
        self.input = input
        super().__init__(f"{input}: {message}" if input is not None else message)


class StructureError(CloudError):
    """A structure that cannot be turned into SCOPE."""


class StructureParseError(StructureError):
    """A file that does not parse into a structure (bad CIF, empty file, unknown format)."""


class DisorderedStructureError(StructureError):
    """Partial occupancy or mixed sites: SCOPE is defined for ordered crystals only."""


class UnknownSpeciesError(StructureError):
    """A dummy species, vacancy or symbol that is not a chemical element."""


class OverlappingAtomsError(StructureError):
    """Two atoms closer than the minimum allowed distance."""


class SymmetryError(StructureError):
    """spglib could not determine the space group."""


class StructureTooLargeError(StructureError):
    """More atoms than the configured limit (``max_atoms``), counted before the slow steps (CIF parsing, spglib)."""


class StructureTimeoutError(StructureError):
    """A structure whose SCOPE took longer than the per-structure time limit; its worker process was replaced."""


class WorkerDiedError(StructureError):
    """The worker process computing this structure died (killed by a signal, e.g. the OOM killer, or a crash)."""


class ScopeStringError(CloudError, ValueError):
    """A string given as SCOPE that is not one: not three ``|`` sections, an unknown generator string, odd
    composition pairs, or tokens outside the model's vocabulary (they would become ``[UNK]``)."""


class BlockSizeError(CloudError, ValueError):
    """A token sequence longer than the model's block size, with truncation off."""


class DataError(CloudError):
    """Problems obtaining or validating a dataset."""


class ChecksumError(DataError):
    """A downloaded or cached file whose sha256 differs from the registry's."""


class DataUnavailableError(DataError):
    """No source (cache, canonical URL, mirror) could provide a dataset."""


class HarvestError(DataError):
    """An OPTIMADE harvest that had to stop (server unreachable, too slow, or not answering OPTIMADE); names the
    URL. Pages harvested before the error stay on disk and a rerun resumes."""


class InvalidTargetError(DataError, ValueError):
    """A NaN/inf or otherwise unusable target value."""


class ConfigError(CloudError, ValueError):
    """A configuration that cannot be used: an unknown step, preset or field, or a value out of range."""


class InputError(CloudError, ValueError):
    """An input named by the user that cannot be read: a missing path, an empty folder, unreadable JSON."""


class ModelError(CloudError):
    """A model or predictor folder that is missing, incomplete or of the wrong kind."""
