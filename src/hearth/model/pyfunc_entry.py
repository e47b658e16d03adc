"""MLflow models-from-code entry point: logged with every model instead of a pickle.

MLflow executes this file when it loads a Hearth model; the class itself lives in
`hearth.model.scorer`, which the serving environment has installed.
"""

from mlflow.models import set_model

from hearth.model.scorer import FraudPyfunc

set_model(FraudPyfunc())
