"""The bundled problems, written as a fork would write them: the regression (the default) and the digits."""
