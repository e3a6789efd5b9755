"""How records reach the user's handler and what happens when it fails.

:mod:`.handler` loads the user's handler; :mod:`.lambda_compat` calls Lambda-style ones with Lambda's event;
:mod:`.filters` applies Lambda filter patterns; :mod:`.delivery` runs a batch under the failure policy;
:mod:`.destinations` and :mod:`.dlq` keep (and re-drive) the records given up on.
"""
