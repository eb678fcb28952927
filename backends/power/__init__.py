"""Sensing and setting power: sensors (NVML, RAPL, Jetson rails, the estimate) and DVFS actuators."""
