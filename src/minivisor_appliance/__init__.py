"""The test guest ("appliance"): a small BIOS-bootable disk built from Debian packages.

Not part of minivisor's runtime: it is what the demo, the tests and the
benchmarks boot (``minivisor image build appliance``).
"""
