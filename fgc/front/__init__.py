"""Front end: spec text → syntax tree (lark), canonical printing, typed sections."""
