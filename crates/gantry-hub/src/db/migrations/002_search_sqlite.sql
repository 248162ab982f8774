CREATE VIRTUAL TABLE items_fts USING fts5(
    title, description, content = 'items', content_rowid = 'id', tokenize = 'porter unicode61'
);
INSERT INTO items_fts (items_fts) VALUES ('rebuild');
CREATE TRIGGER items_fts_insert AFTER INSERT ON items BEGIN
    INSERT INTO items_fts (rowid, title, description) VALUES (new.id, new.title, new.description);
END;
CREATE TRIGGER items_fts_delete AFTER DELETE ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, title, description)
        VALUES ('delete', old.id, old.title, old.description);
END;
CREATE TRIGGER items_fts_update AFTER UPDATE OF title, description ON items BEGIN
    INSERT INTO items_fts (items_fts, rowid, title, description)
        VALUES ('delete', old.id, old.title, old.description);
    INSERT INTO items_fts (rowid, title, description) VALUES (new.id, new.title, new.description);
END;
