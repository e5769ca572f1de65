"""An example freezebench plugin on the trial lifecycle: after every trial is trained, a histogram of
its test images' brightness, stored with the trial and shown in ``freezebench report``.

It needs no change to freezebench: ``pip install`` this package and the figure appears.
"""

import numpy as np

from freezebench import Output, hookimpl
from freezebench.analysis import pyplot


@hookimpl
def trial_trained(trial):
    brightness = trial.test_images.float().mean(dim=(1, 2, 3)).numpy()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.hist(brightness, bins=20)
    ax.set(xlabel="mean pixel value", title="Test image brightness")
    return [Output("brightness.png", figure=fig, title="Test image brightness", section="Data checks"),
            Output("brightness.json", data={"mean": float(np.mean(brightness))})]
