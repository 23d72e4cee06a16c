"""A fork of the template as a user writes one: textbook Lightning classes, nothing from batchsize_lit."""
