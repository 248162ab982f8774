-- A list sorted by priority walks this index and stops after a page,
-- instead of sorting every item its filters select. The expression is
-- the one `Sort::expression` orders by, written the same way.
CREATE INDEX items_priority_rank ON items (product_id, (CASE priority WHEN 'critical' THEN 0 WHEN 'high' THEN 1 WHEN 'medium' THEN 2 ELSE 3 END), id);
-- Items with a label, for a filter on a rare one.
CREATE INDEX item_labels_label ON item_labels (label_id, item_id);
