"""ABSA seed tables: ``python -m apps.absa.summary tnet=outputs/absa/multiruns/<sweep> ...``; see
``apps.common.summary`` (this entry only sets the ABSA columns as the default)."""

from apps.common.summary import ABSA_COLUMNS, main

if __name__ == "__main__":
    main(default_columns=ABSA_COLUMNS)
