package schemas

import (
	"strings"
	"testing"
)

// A job written by hand is refused naming the field it lacks, before a
// trainer embeds anything; a pass's job, and one without a debug-train
// set, pass.
func TestTrainJobValidate(t *testing.T) {
	ok := TrainJob{
		Target:  Model{Path: "m.onnx", Features: "feat", Logits: "logits"},
		Classes: []string{"a", "b"}, Train: "train.csv", Model: "out.onnx",
	}.WithDefaults()
	if err := ok.Validate(); err != nil {
		t.Fatalf("a job without a debug-train set: %v", err)
	}
	backbone := ok
	backbone.Target.Logits = ""
	if err := backbone.Validate(); err != nil {
		t.Errorf("a backbone's job, without logits: %v", err)
	}
	for field, spoil := range map[string]func(*TrainJob){
		"target.features": func(j *TrainJob) { j.Target.Features = "" },
		"target.path":     func(j *TrainJob) { j.Target.Path = "" },
		"classes":         func(j *TrainJob) { j.Classes = nil },
		"train":           func(j *TrainJob) { j.Train = "" },
		"model":           func(j *TrainJob) { j.Model = "" },
		"output":          func(j *TrainJob) { j.Output = "feat" },
	} {
		j := ok
		spoil(&j)
		if err := j.Validate(); err == nil || !strings.HasPrefix(err.Error(), field+": ") {
			t.Errorf("a job lacking %s: %v, want an error naming it", field, err)
		}
	}
}
