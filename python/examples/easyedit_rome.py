"""An EasyEdit script, as EasyEdit's README shows it, with only the import line changed
(`from easyeditor import ...` -> `from kedit import ...`). Run from the repository root:

    python python/examples/easyedit_rome.py

It prints EasyEdit's metric dictionaries; python/tests/test_easyedit_script.py runs it and
checks the numbers against `kedit eval` on the same case.
"""

import json

from kedit import BaseEditor, ROMEHyperParams

prompts = ["Who was the designer of Lahti Town Hall?"]
ground_truth = ["Eliel Saarinen"]
target_new = ["Alfred Lahti"]
subject = ["Lahti Town Hall"]
rephrase_prompts = ["Who designed Lahti Town Hall?"]
locality_inputs = {
    "neighborhood": {
        "prompt": ["nq question: where does the last name harrison come from"],
        "ground_truth": ["English"],
    },
}
portability_inputs = {
    "one_hop": {
        "prompt": ["What city is the designer of Lahti Town Hall from?"],
        "ground_truth": ["Lahti"],
    },
}

hparams = ROMEHyperParams.from_hparams("./hparams/ROME/smollm2-135m.yaml")
editor = BaseEditor.from_hparams(hparams)
metrics, edited_model, _ = editor.edit(
    prompts=prompts,
    ground_truth=ground_truth,
    target_new=target_new,
    subject=subject,
    rephrase_prompts=rephrase_prompts,
    locality_inputs=locality_inputs,
    portability_inputs=portability_inputs,
    sequential_edit=False,
)
print(json.dumps(metrics, indent=2))
