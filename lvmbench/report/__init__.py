"""Tables and figures from run directories: :mod:`.aggregate` (tidy tables), :mod:`.paper`
(published vs reproduced numbers) and :mod:`.plots` (seaborn figures)."""
