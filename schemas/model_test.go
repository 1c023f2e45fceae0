package schemas_test

import (
	"errors"
	"testing"

	"dcd/internal/preprocess"
	"dcd/schemas"
)

func modelConfig(m schemas.Model) schemas.Config {
	return schemas.Config{
		Name:    "models",
		Classes: []string{"a", "b"},
		Target:  m,
		Data: schemas.Data{
			Train: schemas.Dataset{Prefix: "t/"}, Test: schemas.Dataset{Prefix: "s/"}, ErrorSample: schemas.Dataset{Prefix: "e/"},
			ErrorHeldout: schemas.Dataset{Prefix: "h/"}, Pool: schemas.Dataset{Prefix: "p/"},
		},
	}.WithDefaults()
}

// Zero sizes and an empty layout mean "read from the model": they pass
// validation and stay empty until the pass checks the model; the other
// preprocessing defaults are filled as before.
func TestModelSizesFromTheModel(t *testing.T) {
	c := modelConfig(schemas.Model{Path: "m.onnx", Features: "f", Logits: "l",
		Preprocess: preprocess.Spec{Mean: []float32{0.5, 0.5, 0.5}, Std: []float32{0.2, 0.2, 0.2}}})
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	p := c.Target.Preprocess
	if p.Layout != "" || p.Height != 0 || p.Resize != preprocess.ResizeSquash || p.Scale != preprocess.ScaleUnit {
		t.Errorf("defaults: %+v", p)
	}
	c = modelConfig(schemas.Model{Path: "m.onnx", Features: "f", Logits: "l", Preprocess: preprocess.Spec{Layout: " nhwc "}})
	if c.Target.Preprocess.Layout != preprocess.LayoutNHWC {
		t.Errorf("a given layout is kept (normalised): %q", c.Target.Preprocess.Layout)
	}
}

func TestModelPreprocessStillChecked(t *testing.T) {
	for _, p := range []preprocess.Spec{
		{Height: -1},
		{Channels: 2},
		{Mean: []float32{0.5, 0.5}},
		{Channels: 1, Std: []float32{1, 1, 1}},
		{Layout: "NCWH"},
	} {
		err := modelConfig(schemas.Model{Path: "m.onnx", Features: "f", Logits: "l", Preprocess: p}).Validate()
		var fe *schemas.FieldError
		if !errors.As(err, &fe) || fe.Field != "target.preprocess" {
			t.Errorf("%+v: got %v, want an error naming target.preprocess", p, err)
		}
	}
}

// stored_as defaults to float32, takes float16 in any case and spacing,
// and refuses anything else naming the field.
func TestModelStoredAs(t *testing.T) {
	for in, want := range map[string]string{"": schemas.Float32, " Float16 ": schemas.Float16, "FLOAT32": schemas.Float32} {
		c := modelConfig(schemas.Model{Path: "m.onnx", Features: "f", Logits: "l", StoredAs: in})
		if err := c.Validate(); err != nil || c.Target.StoredAs != want {
			t.Errorf("stored_as %q: %q, %v; want %q", in, c.Target.StoredAs, err, want)
		}
	}
	c := modelConfig(schemas.Model{Path: "m.onnx", Features: "f", Logits: "l"})
	c.Similarity = &schemas.Model{Path: "s.onnx", Features: "f", StoredAs: "int8"}
	err := c.WithDefaults().Validate()
	var fe *schemas.FieldError
	if !errors.As(err, &fe) || fe.Field != "similarity.stored_as" {
		t.Errorf("stored_as int8: %v, want an error naming similarity.stored_as", err)
	}
}
