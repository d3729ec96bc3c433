"""The emulated bench, one module per part.

* :mod:`~clln.simulator.emulator.firmware`: the potentiometer controller's protocol logic.
* :mod:`~clln.simulator.emulator.link`: its serial link on a pseudo-terminal, line faults,
  the traffic log.
* :mod:`~clln.simulator.emulator.daq`: the DAQ adapter's interface answered from the model.
* :mod:`~clln.simulator.emulator.model`: the bench model (the simulator plus edge faults,
  grounded-input readings and the SMU's two-point resistance).
* :mod:`~clln.simulator.emulator.bench`: the whole emulated bench and wiring faults.

:mod:`clln.simulator.bench` re-exports all of them.
"""
