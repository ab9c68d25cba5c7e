"""Model families behind one contract (:class:`mlsmith.models.base.Model`)."""
