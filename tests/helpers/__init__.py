"""What tests share: composing conf/ (compose.py), the tiny job (jobs.py), fixtures (fixtures.py,
loaded by tests/conftest.py), real servers (servers.py), fault callbacks (faults.py) and MedMNIST
files (medmnist_files.py). Test modules import from here, never from each other."""
