"""Reports from results stores: tables, plots, HTML, comparisons of two stores, speed-ups and the
paper-reference table."""
