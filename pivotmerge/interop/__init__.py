"""Interoperability with other projects' checkpoint formats (LLaVA's mm_projector.bin)."""
from pivotmerge.interop.llava import LLAVA_PREFIX, export_llava, from_llava, import_llava, to_llava

__all__ = ["LLAVA_PREFIX", "export_llava", "from_llava", "import_llava", "to_llava"]
