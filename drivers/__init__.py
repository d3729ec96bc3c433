"""Real hardware drivers (nidaqmx, potentiometer bank over serial, VISA instruments)."""
