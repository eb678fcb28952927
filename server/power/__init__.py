"""The power loop: sensors read and DVFS levels applied each control period, energy per stage, its metrics."""
