"""NERLab core: everything the pages, the CLI and the worker share. No Streamlit outside core.ui."""
