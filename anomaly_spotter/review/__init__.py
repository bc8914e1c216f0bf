"""The threshold review dashboard: its data and actions (`dashboard.py`), its Streamlit page (`app.py`)."""
