package schemas

import (
	"errors"
	"fmt"
)

// TrainJob is what an external trainer command is given in the file
// {job}: the target model with its preprocessing as the pass resolved it,
// the classes in the order of the logits, the retraining recipe, the seed,
// and the keys of its inputs and output in the worker's bucket.
type TrainJob struct {
	Run    string `json:"run"`
	Method string `json:"method"`
	// Target's Input and Preprocess are filled in from the model.
	Target Model `json:"target"`
	// TargetBatch is the batch size the target's image input is fixed to
	// (an export without a dynamic batch axis); 0: any.
	TargetBatch int      `json:"target_batch,omitempty"`
	Classes     []string `json:"classes"`
	Retrain     Retrain  `json:"retrain"`
	Seed        uint64   `json:"seed"`
	// Train and DebugTrain are CSV manifests (uri,label,domain first; a
	// dcd method's debug set has score,pool_id,version after them, so read
	// them by the header; a uri starting with "/" is a key of the bucket).
	// A job written for train-head by hand may give any manifest, or an
	// ImageFolder prefix ending in "/", and may leave DebugTrain out.
	// Model is where the ONNX classifier must be written, with its class
	// scores in the graph output Output.
	Train      string `json:"train"`
	DebugTrain string `json:"debug_train"`
	Model      string `json:"model"`
	Output     string `json:"output"`
}

// WithDefaults fills in what a job written by hand may leave out, as a
// pass's config has it filled in: a recipe's zeros are its defaults (a
// debug_weight of 0 would drop the debug-train set unsaid).
func (j TrainJob) WithDefaults() TrainJob {
	j.Retrain = j.Retrain.withDefaults()
	if j.Output == "" {
		j.Output = "probabilities"
	}
	return j
}

// Validate checks what a job written by hand may get wrong before a trainer
// embeds an image: the target's fields as a config's target is checked
// (its input and preprocessing may be left to CompleteTarget, its logits
// out: a backbone whose only output is its features), the
// classes, the keys of the train manifest and of the model to write, and
// an output that is not the target's features. DebugTrain may be empty:
// the head is then trained on train alone.
func (j TrainJob) Validate() error {
	var fe *FieldError
	if err := j.Target.validate("target", false); errors.As(err, &fe) {
		return fmt.Errorf("%s: %s", fe.Field, fe.Msg)
	} else if err != nil {
		return err
	}
	switch {
	case len(j.Classes) == 0:
		return errors.New("classes: must list the class names, in the order of the target's logits")
	case j.Train == "":
		return errors.New("train: must name the train set's manifest, or its ImageFolder prefix ending in / (or -train)")
	case j.Model == "":
		return errors.New("model: must name the key to write the ONNX model to (or -out)")
	case j.Output == j.Target.Features:
		return fmt.Errorf("output: %q is the target's features output; name the head's output otherwise", j.Output)
	}
	return nil
}
