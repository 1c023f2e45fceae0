package schemas

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// checkYAMLWholeNumbers refuses what yaml.v3 takes silently: a number with
// a fraction given for a whole-number field (k: 2.9 became 2, k: 0.5
// became 0 and so the default), as JSON loading refuses it. It walks the
// document's mappings and sequences beside the Go type t it decodes into.
func checkYAMLWholeNumbers(n *yaml.Node, path string, t reflect.Type) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.DocumentNode || n.Kind == yaml.AliasNode {
		for _, c := range n.Content {
			if err := checkYAMLWholeNumbers(c, path, t); err != nil {
				return err
			}
		}
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			return checkYAMLWholeNumbers(n.Alias, path, t)
		}
		return nil
	}
	if t == nil || t.Implements(yamlUnmarshaler) || reflect.PointerTo(t).Implements(yamlUnmarshaler) {
		return nil // its own shape
	}
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag != "!!float" {
			return nil
		}
		switch t.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			if f, err := strconv.ParseFloat(n.Value, 64); err != nil || f != math.Trunc(f) {
				return fmt.Errorf("line %d: %s: %s is not a whole number (YAML would cut it to one)", n.Line, path, n.Value)
			}
		}
	case yaml.SequenceNode:
		if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
			return nil
		}
		for i, c := range n.Content {
			if err := checkYAMLWholeNumbers(c, fmt.Sprintf("%s[%d]", path, i), t.Elem()); err != nil {
				return err
			}
		}
	case yaml.MappingNode:
		var fields map[string]reflect.Type
		switch t.Kind() {
		case reflect.Struct:
			fields = map[string]reflect.Type{}
			yamlFields(t, fields)
		case reflect.Map:
		default:
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if n.Content[i].Tag == "!!merge" { // <<: a mapping, or a list of them, merged into this one
				merged := n.Content[i+1]
				if merged.Kind == yaml.AliasNode && merged.Alias != nil {
					merged = merged.Alias
				}
				parts := []*yaml.Node{merged}
				if merged.Kind == yaml.SequenceNode {
					parts = merged.Content
				}
				for _, part := range parts {
					if err := checkYAMLWholeNumbers(part, path, t); err != nil {
						return err
					}
				}
				continue
			}
			at := key
			if path != "" {
				at = path + "." + key
			}
			vt := t
			if fields != nil {
				vt = fields[key] // an unknown key: the decoder refuses it
			} else {
				vt = t.Elem()
			}
			if err := checkYAMLWholeNumbers(n.Content[i+1], at, vt); err != nil {
				return err
			}
		}
	}
	return nil
}

var yamlUnmarshaler = reflect.TypeFor[yaml.Unmarshaler]()

// yamlFields adds the YAML names of struct t's fields, as yaml.v3 names
// them (its tag, else the field's name in lower case; inline structs'
// fields as the struct's own), with their types.
func yamlFields(t reflect.Type, fields map[string]reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		if tag == "-" || !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") && f.Type.Kind() == reflect.Struct {
			yamlFields(f.Type, fields)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = f.Type
	}
}
