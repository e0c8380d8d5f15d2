-- Subtree queries by index range: `id_path` is '/root/…/parent/id/', so "at or under X" is
-- `id_path LIKE X.id_path || '%'`, served by a btree range scan whatever the tree's size.
ALTER TABLE identity.perimeters ADD COLUMN id_path text NOT NULL DEFAULT '';
UPDATE identity.perimeters SET id_path = '/' || array_to_string(ancestors || id, '/') || '/';
CREATE INDEX perimeters_id_path ON identity.perimeters (id_path text_pattern_ops);
