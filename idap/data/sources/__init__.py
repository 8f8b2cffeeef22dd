"""Where each dataset comes from; importing a module registers its entries."""
