"""The product's command group: ``ric <command>`` runs a stage script (its own parser and ``main``); ``ric ui``."""
