package schemas

import (
	"errors"
	"testing"
)

// minimalConfig is a valid config with the fewest fields set.
func minimalConfig() Config {
	return Config{Name: "x", Classes: []string{"a", "b"},
		Target: Model{Path: "m.onnx", Features: "f", Logits: "l"},
		Data: Data{Train: Dataset{Prefix: "t/"}, Test: Dataset{Prefix: "t/"}, ErrorSample: Dataset{Prefix: "e/"},
			ErrorHeldout: Dataset{Prefix: "h/"}, Pool: Dataset{Manifest: "p.csv"}},
	}.WithDefaults()
}

// classes_file stands in for classes; one of them is needed.
func TestClassesOrClassesFile(t *testing.T) {
	c := minimalConfig()
	c.Data.ErrorHeldout = Dataset{Manifest: "s3://bucket/h.parquet?region=us-east-1"}
	if err := c.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	c.Classes = nil
	var fe *FieldError
	if err := c.Validate(); !errors.As(err, &fe) || fe.Field != "classes" {
		t.Errorf("no classes: %v, want an error naming classes", err)
	}
	c.ClassesFile = "classes.txt"
	if err := c.Validate(); err != nil {
		t.Errorf("classes_file instead of classes: %v", err)
	}
	// Beside classes_file, classes are ignored, left over or not.
	c.Classes = []string{"", "a", "a"}
	if err := c.Validate(); err != nil {
		t.Errorf("classes_file beside ignored classes: %v", err)
	}
}

// Classes are compared with labels composed (NFC), as labels are read.
func TestClassesComposed(t *testing.T) {
	c := Config{Classes: []string{"cafe\u0301", " b "}}.WithDefaults()
	if c.Classes[0] != "caf\u00e9" || c.Classes[1] != "b" {
		t.Errorf("classes %q, want composed and trimmed", c.Classes)
	}
}
